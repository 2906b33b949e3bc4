machine.start()
machine.wait_for_unit("multi-user.target")

with subtest("core tools are still present"):
    machine.succeed("su - testuser -c 'command -v git && command -v zsh'")

with subtest("graphical and dev tools are absent"):
    machine.fail("command -v niri")
    machine.fail("systemctl is-active docker.service")
    machine.fail("command -v docker")
    # Proof that the absence checks can see presence: a tool that is installed is found.
    machine.succeed("command -v git")
