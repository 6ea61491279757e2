"""HTTP adapter: FastAPI routers, request/response mapping and list-method helpers."""
