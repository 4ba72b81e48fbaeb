"""The virtual lab as test fixtures: libvirt TCG VMs behind sushy-emulator and VirtualBMC, in a netns.

Modules, bottom up:

* ``netns``      the network namespace: create, run inside (subprocess or a thread), identity, delete
* ``processes``  processes started inside it, recorded and stopped by PID only
* ``serial``     a VM's serial console log: bounded waits for a regex, firmware starts, a timed recorder
* ``libvirt``    libvirtd with private state, the storage pool, TCG domains (BIOS or UEFI), their disks
* ``bmc``        sushy-emulator (Redfish, libvirt driver) and vbmcd/VirtualBMC (IPMI)
* ``service``    Ironworks under test inside the namespace, its HTTP client and the ``baremetal`` CLI
* ``lab``        ``Lab``: all of it, set up as named steps and torn down completely
* ``fixtures``   the pytest fixtures ``lab`` (session) and ``lab_ironworks`` (module)

The recipe, its measurements and its pitfalls come from ``/work/shared/lab`` (shell scripts); this is
the project's own Python implementation of it. See ``tests/e2e/README.md`` for how the tiers use it.
"""
