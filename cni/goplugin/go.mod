module routed/cni/goplugin

go 1.22
