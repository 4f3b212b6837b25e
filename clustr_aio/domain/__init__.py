"""The words of the product, with no aiohttp and no I/O: errors that carry their HTTP status,
safe names, content sniffing, limits, and the API's models."""
