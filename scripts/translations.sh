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
    "$PYBABEL" extract -F babel.cfg -k N_ -k _ --no-location --sort-output \
      --project EdgeBox --copyright-holder EdgeBox -o "$DIR/messages.pot" .
    for lang in "${LANGS[@]}"; do
      if [ -f "$DIR/$lang/LC_MESSAGES/messages.po" ]; then
        "$PYBABEL" update --no-fuzzy-matching --ignore-obsolete -i "$DIR/messages.pot" -d "$DIR" -l "$lang"
      else
        "$PYBABEL" init -i "$DIR/messages.pot" -d "$DIR" -l "$lang"
      fi
    done
    ;;
  compile)
    "$PYBABEL" compile -d "$DIR"
    ;;
  check)
    .venv/bin/python -m pytest -q tests/test_translations.py -k catalog
    ;;
  *)
    echo "usage: $0 update|compile|check" >&2
    exit 2
    ;;
esac
