"""Everything that speaks HTTP: the application factory, middlewares, routes, OpenAPI. The only
package that imports aiohttp's server side."""
