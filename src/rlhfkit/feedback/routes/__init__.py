"""The app's routers, one per resource: auth, labelling, admin, export, the JSON API."""
