"""One hook per external service: connection, auth, wire format, retries."""
