"""One module per data type: its op argument structs and the shapes of its events and state
(:class:`protocol.datatype.DataType`). :mod:`protocol.registry` lists them."""
