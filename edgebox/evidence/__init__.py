"""Evidence packages: one folder per recording that anyone can check with no key.

`writer` builds a package (the box and central each gather the recording, its signed manifest
and its custody segment, then share this one code path); `verify` checks one with neither box
nor central (`edgebox verify-package`).
"""
