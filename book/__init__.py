"""The course as a static website (Jupyter Book 1.x): `make book` runs :mod:`book.build`."""
