"""The shared vocabulary of pinfold's shells: what a VM request and a VM view
hold, the lifecycle (one state enum, one transition table), and the closed set
of error codes with their HTTP statuses.

Rule: this package imports only the standard library and the placement core
(`pinfold.placement`, `pinfold.topology`). The agent, the controller, the
simulator, the RAPID endpoint and the CLI import from here; nothing here
imports them. Its modules are imported by name (`pinfold.model.errors`,
`pinfold.model.refusal` (a placement refusal as JSON),
`pinfold.model.lifecycle`, `pinfold.model.vm`, `pinfold.model.failpoints`
(the crash points of the tests that kill the agent)).
"""
