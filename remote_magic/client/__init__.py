"""The Python client: `Client` (one method per endpoint, api.py), `Job` handles, the connection's TLS
rules, the errors a remote failure raises, and the dry run. Uses the contract and the display objects;
never the magics, never the server."""
