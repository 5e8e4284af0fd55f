"""The job intake: the checks every job passes before it is stored (a person's through HTTP and a
recipe's alike), the catalog of datasets and their versions it checks against, and a job's status as
its user sees it. Below the HTTP face (api/) and the automation, which both import it."""
