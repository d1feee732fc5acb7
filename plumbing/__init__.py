"""What every part needs and no part owns: MQTT client set-up, private files, exit codes.

It sits below kits/, fleet/, agent/ and simulators/ so none of them has to import the command line's
package (popkit/) for it; it imports no project package itself.
"""
