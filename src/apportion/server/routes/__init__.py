"""One module per resource of the API (``/api/v1/...``): parse, authorize,
call a service, render. No decisions and no SQL here."""
