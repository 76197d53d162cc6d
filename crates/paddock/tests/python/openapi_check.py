"""Validates served OpenAPI documents with openapi-spec-validator.
Usage: openapi_check.py FILE...  (each a JSON document, v2 or v3)."""

import json
import sys

from openapi_spec_validator import validate

for path in sys.argv[1:]:
    with open(path) as f:
        doc = json.load(f)
    validate(doc)
    print(f"{path}: valid ({'openapi ' + doc['openapi'] if 'openapi' in doc else 'swagger ' + doc['swagger']})")
