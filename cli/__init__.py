"""The `unmask` command line: its commands (main.py) and their key=value parsing (parse.py). On top of every other
package; each command imports what it runs only when it runs."""
