"""The container health check: exit 0 if /readyz answers 200, else 1. Standard library only, so it
runs in the image without curl. `python -m service.probe`.

With COORDCONV_TLS_CERT_FILE set it asks over HTTPS without verifying the certificate (it talks
to its own server on the loopback: readiness is the question, not identity); with
COORDCONV_TLS_CLIENT_CA_FILE too it presents the server's certificate and key as its client
certificate, which the server accepts where that CA signed it and it allows client
authentication (extended key usage clientAuth)."""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("COORDCONV_PORT", "8000")
    cert = os.environ.get("COORDCONV_TLS_CERT_FILE")
    url = f"{'https' if cert else 'http'}://127.0.0.1:{port}/readyz"
    try:
        context = None
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if os.environ.get("COORDCONV_TLS_CLIENT_CA_FILE"):
                context.load_cert_chain(cert, os.environ.get("COORDCONV_TLS_KEY_FILE") or None)
        with urllib.request.urlopen(url, timeout=3, context=context) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
