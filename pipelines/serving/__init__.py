"""What the server needs beside the request path (`pipelines.serve`): the HTTP app and its
keys, the event store, the live catalogue, the serving state and the request runtimes."""
