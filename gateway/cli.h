/* gateway/cli.h: the `gateway keys ...` / `gateway accounts ...` commands,
 * a client of the admin listener (docs/operations.md, "The command line"). */
#ifndef RW_GATEWAY_CLI_H
#define RW_GATEWAY_CLI_H

/* argv[0] is "keys" or "accounts". Returns the process's exit status. */
int cli_main(int argc, char **argv);

#endif
