"""Redis Sentinel as the Celery broker: ``sentinel://`` URLs, with the master's name in them.

kombu's sentinel transport takes the sentinels as alternates of one broker URL
(``sentinel://host:26379;sentinel://host2:26379``) and the name of the monitored master only as
the transport option ``master_name``; a ``?master_name=`` left in the URL makes kombu raise a
TypeError.  tokenrelay reads the name from the query of any of the URLs, so that one variable
(``TOKENRELAY_BROKER_URL``) says everything, and hands kombu the URLs without it plus the
option (broker/app.py).  A password in a URL is the master's (and the sentinels', unless they
have none: redis-py sends it to the master only).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.errors import ValidationError

SENTINEL_SCHEME = "sentinel://"
MASTER_NAME = "master_name"


@dataclass(frozen=True)
class SentinelBroker:
    url: str  # what kombu takes: the sentinels' URLs joined by ';', without master_name
    master_name: str


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str, field: str = "broker_url") -> SentinelBroker:
    """Split ``sentinel://h1:26379;sentinel://h2:26379?master_name=mymaster`` into kombu's URL
    and the master's name; a ValidationError naming ``field`` if it is malformed (the URL is
    never quoted in the message: it may hold a password)."""
    names: set[str] = set()
    cleaned: list[str] = []
    parts = [part.strip() for part in url.split(";") if part.strip()]
    for number, part in enumerate(parts, 1):
        kombu_url, named = _without_master_name(part, f"URL {number} of the sentinel list", field)
        cleaned.append(kombu_url)
        names |= named
    if not names or "" in names:
        raise ValidationError(
            field, f"a {SENTINEL_SCHEME} broker URL needs the master's name: add ?{MASTER_NAME}=<name> (the name "
            "in the sentinels' `sentinel monitor` line)",
        )  # fmt: skip
    if len(names) > 1:
        raise ValidationError(field, f"the sentinel URLs name different masters: {', '.join(sorted(names))}")
    return SentinelBroker(";".join(cleaned), names.pop())


def _without_master_name(part: str, which: str, field: str) -> tuple[str, set[str]]:
    """One sentinel's URL checked, without its master_name, and the names it gave."""
    if not is_sentinel_url(part):
        raise ValidationError(field, f"{which} does not start with {SENTINEL_SCHEME}")
    split = urlsplit(part)
    try:
        split.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        raise ValidationError(field, f"{which} has a bad port: {exc}") from None
    if not split.hostname:
        raise ValidationError(field, f"{which} has no host")
    query = parse_qsl(split.query, keep_blank_values=True)
    rest = [(key, value) for key, value in query if key != MASTER_NAME]
    return urlunsplit(split._replace(query=urlencode(rest))), {value for key, value in query if key == MASTER_NAME}
