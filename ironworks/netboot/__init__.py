"""Network boot: per-node boot configs, boot files over HTTP and TFTP, and the DHCP provider."""
