//! What both sides of the wire share: messages, framing, key encoding, shard descriptors and epochs, errors, TLS setup, and the routing client.
