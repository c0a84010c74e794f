#!/usr/bin/env bash
# The UI's message catalogs (web/translations/{nl,fr,de,en}/LC_MESSAGES/messages.po).
#   scripts/translations.sh update   extract every marked string and merge it into each .po
#   scripts/translations.sh compile  compile the .po files into .mo (the wheel build does this too)
#   scripts/translations.sh check    fail on an untranslated, fuzzy or placeholder-broken entry
set -euo pipefail
cd "$(dirname "$0")/.."
PYBABEL=${PYBABEL:-.venv/bin/pybabel}
DIR=web/translations
LANGS=(en nl fr de)
case "${1:-}" in
  update)
    "$PYBABEL" extract -F babel.cfg -k N_ -k _ --no-location --sort-output -w 100 \
      --project EdgeBox --copyright-holder EdgeBox -o "$DIR/messages.pot" .
    for lang in "${LANGS[@]}"; do
      if [ -f "$DIR/$lang/LC_MESSAGES/messages.po" ]; then
        "$PYBABEL" update -w 100 --no-fuzzy-matching --ignore-obsolete -i "$DIR/messages.pot" -d "$DIR" -l "$lang"
      else
        "$PYBABEL" init -i "$DIR/messages.pot" -d "$DIR" -l "$lang"
      fi
    done
    # English is the source language: its catalog says every string as it is written.
    "${PYTHON:-.venv/bin/python}" - "$DIR/en/LC_MESSAGES/messages.po" <<'PY'
import sys
from babel.messages.pofile import read_po, write_po
path = sys.argv[1]
with open(path, "rb") as handle:
    catalog = read_po(handle, locale="en")
for message in catalog:
    if message.id and not any(message.string if isinstance(message.string, tuple) else [message.string]):
        message.string = message.id
with open(path, "wb") as handle:
    write_po(handle, catalog, width=100, no_location=True, sort_output=True)
PY
    echo "translations: now fill every empty msgstr in $DIR/{nl,fr,de}/LC_MESSAGES/messages.po" >&2
    ;;
  compile)
    "$PYBABEL" compile -d "$DIR"
    ;;
  check)
    "${PYTHON:-.venv/bin/python}" -m pytest -q tests/test_translations.py -k catalog
    ;;
  *)
    echo "usage: $0 update|compile|check" >&2
    exit 2
    ;;
esac
