"""Model classes as a user's own repository holds them, imported by path (`modelzoo.faces:TupleNet`) in tests."""
