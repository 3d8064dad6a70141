"""The browser path (`--web-port`): gRPC-Web and the Connect protocol (binary and JSON) for the same
services, from the same protos, served next to native gRPC.

    gateway.py   one ASGI application (connect-python) whose endpoints come from the services'
                 descriptors; each call is forwarded to this process's own gRPC server
    cors.py      which browser origins may call (`--web-cors-origin`)
    departures.py  a call ends as soon as its browser goes away
    listener.py  the listening socket and hypercorn, started and stopped with the server

Every call goes through the gRPC server over a private Unix socket, so the browser gets exactly
the native behaviour: tokens, admission, validation, rich errors, log lines and metrics.
"""
