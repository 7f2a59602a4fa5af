"""The Envoy attributes the ext_proc filter asks for, by name.

envoyconf.py puts REQUEST_ATTRIBUTES in the filter's `request_attributes`
(envoy/*.yaml), and server/capture.py reads exactly these from each
ProcessingRequest: one list, so the config and the capture cannot drift.
Never `xds.node`: it is an 80 KB text dump; `xds.node.id` is the CEL field
needed. (`source.principal` is not an Envoy attribute: the peer's identity is
the URI SAN of its certificate, connection.uri_san_peer_certificate.)
"""

from __future__ import annotations

# Where ext_proc puts the attributes in a ProcessingRequest (its `attributes` map).
ATTR_NAMESPACE = "envoy.filters.http.ext_proc"
REQUEST_ID = "request.id"  # the client's x-request-id on internal traffic
REQUEST_PROTOCOL = "request.protocol"
SOURCE_ADDRESS = "source.address"
DESTINATION_ADDRESS = "destination.address"
PEER_SAN = "connection.uri_san_peer_certificate"
LOCAL_SAN = "connection.uri_san_local_certificate"  # the identity a request was served as
NODE_ID = "xds.node.id"
REQUEST_ATTRIBUTES = (
    REQUEST_ID,
    REQUEST_PROTOCOL,
    SOURCE_ADDRESS,
    DESTINATION_ADDRESS,
    PEER_SAN,
    LOCAL_SAN,
    NODE_ID,
)
