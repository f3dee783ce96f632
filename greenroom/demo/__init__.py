"""The bundled demo: the demo SaaS console (saas), its example connector (connector), and
`greenroom demo` (browser_demo), which runs the connector on worker processes against it."""
