"""The HTTP layer: the app factory, the views, the OpenAI routes, JSON bodies, access control, the web page, the
OpenAPI description, the error renderer, the request hooks and /metrics. Nothing below this package imports Flask."""
