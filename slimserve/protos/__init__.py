"""Protocol sources (.proto) and their generated, committed Python stubs (land with the server issue)."""
