"""The dashboard's static files (HTML, JavaScript, CSS), served by `routes_ui`."""
