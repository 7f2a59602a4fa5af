"""Reporter trust as pure policy: who may write to the log (docs/THREATS.md).

`reporter.py` (the Reporter every entry records, refusal reasons),
`sources.py` (identity sources: a client certificate, the own sidecar's XFCC
element, a Unix socket), `policy.py` (ReporterPolicy: the source of a
listener, the allow-list, the destination check), `xfcc.py` (Envoy's XFCC
grammar). No gRPC, no I/O, no clock: the server hands in what the transport
proved (server/identify.py) and the options come from config.py.
"""
