"""Every ``mesh`` command: its group (``launcher.commands.GROUP``) and its one-line help.
Imports nothing: ``mesh --help`` reads it before anything else is loaded."""

from __future__ import annotations

# command -> (its group, its one-line help), in the order 'mesh --help' lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("router", "start the router in the background"),
    "router": ("router", "run the router in the foreground"),
    "stop": ("router", "stop the router (and remove the bridge if it made it)"),
    "reset": ("router", "leave the mesh for good: hand over the address share, remove everything"),
    "connect": ("peers", "add connection targets at run time"),
    "forget": ("peers", "remove connection targets (and drop their connections)"),
    "ping": ("peers", "round trips to a peer over the mesh's encrypted UDP path, and the path"),
    "rmpeer": ("peers", "reclaim the address share of a dead peer"),
    "password": (
        "peers",
        "rotate the mesh password without downtime (rotate --new-file F), or retire it "
        "for certificates (retire)",
    ),
    "ca": (
        "certs",
        "the mesh CA, with the operator: mesh ca init|sign|revoke|show DIR ...",
    ),
    "revoke": ("certs", "evict a host from the mesh: mesh revoke --file F (from 'mesh ca revoke')"),
    "cert": ("certs", "this host's certificate: mesh cert renew --cert F --key F | show F"),
    "attach": ("containers", "attach a container: mesh attach [ADDR...] CONTAINER"),
    "detach": (
        "containers",
        "detach a container from the mesh (or take some of its addresses away)",
    ),
    "reattach": (
        "containers",
        "attach a recorded container again after it restarted (the router does it itself)",
    ),
    "prune": ("containers", "forget containers removed without detach (the router does it itself)"),
    "ps": ("containers", "list containers attached on this host"),
    "status": ("info", "show the router, its connections and targets"),
    "report": ("info", "everything the router knows, as JSON"),
    "version": ("info", "versions: meshrouter, protocol, data plane, Python"),
    "doctor": ("info", "check this host and every peer; say what is wrong and what to do"),
    "dns-add": ("dns", "add names in the mesh's DNS"),
    "dns-remove": ("dns", "remove names in the mesh's DNS"),
    "dns-lookup": ("dns", "addresses of a name in the mesh's DNS"),
    "dns-args": ("dns", "print the 'docker run' options that point a container at the mesh's DNS"),
    "expose": ("expose", "give this host an address on the mesh"),
    "hide": ("expose", "undo 'mesh expose' (addresses and masquerading)"),
    "setup-cni": ("integrations", "install the CNI plugin and a network configuration for it"),
    "kube-sync": ("integrations", "connect to the Kubernetes cluster's nodes; rmpeer deleted ones"),
}
