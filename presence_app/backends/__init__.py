"""One backend per URL scheme: publish, listen and the presence transitions."""
