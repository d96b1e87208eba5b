"""The DyRef application: the `dyref` command line, the local launcher, the demo, the chaos suite and
the cluster command. It composes the services (services/) and the library (common/); neither of
them imports it (docs/architecture.md, "Layout")."""
