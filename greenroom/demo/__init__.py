"""The bundled demo: an example app of multi-step workflows and a driver that runs it."""
