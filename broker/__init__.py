"""Everything NATS: connection, stream/consumer/KV layout, envelopes, publish, pull.

This package is the only one that imports ``nats``; the rest of Berth talks to
it through the names exported here.
"""
