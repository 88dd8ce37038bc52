"""One module per schema revision, written by hand and never edited once released."""
