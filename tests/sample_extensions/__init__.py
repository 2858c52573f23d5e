"""Small extension modules the tests load through APP_EXTENSIONS, each showing one behaviour."""
