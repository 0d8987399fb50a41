"""A small reference web gateway: the show listing page, live availability over Server-Sent Events,
and JSON endpoints that turn a browser's clicks into seat holds. It keeps no state of its own beyond
the latest availability of each event, which it fans out to every connected browser."""
