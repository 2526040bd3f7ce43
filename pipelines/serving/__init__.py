"""What the server needs beside the request path (`pipelines.serve`): the HTTP app, its models,
ASGI layers and keys, the event store, the live catalogue and the serving state."""
