#!/usr/bin/env python3
"""Reads an image's SBOM the way a supply-chain tool would, with the `oras`
Python SDK (PyPI `oras`, 0.2.43) against a plain-HTTP registry.

    python3 oras_sbom.py HOST:PORT NAME SUBJECT_DIGEST OUT_DIR

oras 0.2.43 has no referrers call of its own, so the referrers index is
fetched through the client's own request path (`Registry.do_request`, which
does its authentication) and checked against oras' OCI index schema; the SBOM
manifest named in the index is then fetched with `get_manifest` (checked
against oras' manifest schema) and its layer downloaded with `pull`, as
`oras pull HOST/NAME@DIGEST` would.

Writes OUT_DIR/result.json: {"referrers": index, "filters": header value,
"manifest_digest", "manifest", "files": [downloaded paths]}. Exits non-zero
on any failure (an HTTP error, a schema violation, no SPDX referrer).
"""

import json
import os
import sys
import urllib.parse

import jsonschema
import oras.client
import oras.defaults
import oras.schemas

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SPDX = "application/spdx+json"


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    host, name, subject, out_dir = sys.argv[1:]
    client = oras.client.OrasClient(hostname=host, insecure=True)

    # Percent-encoded: in a query string `+` stands for a space.
    query = urllib.parse.urlencode({"artifactType": SPDX})
    url = f"http://{host}/v2/{name}/referrers/{subject}?{query}"
    resp = client.do_request(url, "GET", headers={"Accept": INDEX})
    if resp.status_code != 200:
        print(f"GET {url}: {resp.status_code} {resp.text[:500]}", file=sys.stderr)
        return 1
    index = resp.json()
    jsonschema.validate(index, schema=oras.schemas.index)
    spdx = [m for m in index["manifests"] if m.get("artifactType") == SPDX]
    if not spdx:
        print(f"no {SPDX} referrer of {subject}: {json.dumps(index)}", file=sys.stderr)
        return 1
    digest = spdx[0]["digest"]

    target = f"{host}/{name}@{digest}"
    manifest = client.get_manifest(
        target, allowed_media_type=[OCI_MANIFEST], validation_schema=oras.schemas.manifest
    )
    files = client.pull(target=target, allowed_media_type=[OCI_MANIFEST], outdir=out_dir)

    result = {
        "referrers": index,
        "filters": resp.headers.get("OCI-Filters-Applied"),
        "manifest_digest": digest,
        "manifest": manifest,
        "files": [os.path.abspath(f) for f in files],
    }
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
