"""Client packages stay light: importing them never pulls in torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_client_packages_do_not_import_torch() -> None:
    code = (
        "import sys, schemas, producer, consumer, broker, gateway\n"
        "from producer import Producer\n"
        "from gateway import create_app\n"
        "create_app('redis://127.0.0.1:1/0')\n"
        "from consumer import StreamReader, AsyncStreamReader\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'workers.engine') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
