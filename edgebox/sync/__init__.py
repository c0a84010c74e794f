"""Upstream sync: the durable outbox, the MQTT 5 link, and the file transfer to central."""
