// Package container tests the container image (docs/container/Dockerfile): it builds the image
// with Podman, runs a three-node cluster of it from docs/container/pgbastion.yaml on a bridge
// network (198.19.77.0/24; the nodes find each other by name), and checks what an operator
// relies on: the HEALTHCHECK, ctl health's role checks, a switchover, that stopping the
// primary's container stops its PostgreSQL cleanly (postgresql.stop_on_exit) and loses
// nothing, and that the node, re-created at another address, rejoins under its name.
//
// It needs root, podman, buildah, runc and debootstrap (.ci/run installs them); without them it
// is skipped, except under CI (CI set), where that is a failure. Docker Hub is out of reach here,
// so the two base images the Dockerfile names are built locally under their names: Debian
// bookworm from debootstrap, and the same with this machine's Go for golang:1.26-bookworm.
package container
