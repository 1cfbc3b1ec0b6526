"""Process runtime of the energy web server: targets, managed servers, the `ews` CLI."""
