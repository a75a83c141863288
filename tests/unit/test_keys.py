"""The help screen is made from the bindings: every key is documented, nothing else is."""

from tcptop.frontends.screen.keys import APP_BINDINGS, GROUP_BINDINGS, MOUSE_HELP, TABLE_BINDINGS, key_help, key_names


def test_every_binding_has_a_help_line_that_names_its_keys():
    rows = dict((what, keys) for keys, what in key_help())
    for b in TABLE_BINDINGS + GROUP_BINDINGS + APP_BINDINGS:
        assert b.tooltip, f"binding {b.id} has nothing to say in the help"
        assert all(k in rows[b.tooltip].split("  ") for k in key_names(b))


def test_the_help_holds_only_what_bindings_say_and_the_mouse():
    said = {b.tooltip for b in TABLE_BINDINGS + GROUP_BINDINGS + APP_BINDINGS}
    lines = key_help()
    assert {what for _, what in lines} == said | {MOUSE_HELP[1]}
    assert [what for _, what in lines][-2:] == ["this help", "quit"]


def test_a_new_binding_appears_in_the_help_at_once():
    from textual.binding import Binding

    extra = Binding("x", "explode", "Explode", tooltip="explode the flow list")
    assert ("x", "explode the flow list") in key_help(TABLE_BINDINGS + [extra] + APP_BINDINGS)
