from modules.ui_components import ToolButton

refresh_buttons = []


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for k, v in args.items():
            setattr(refresh_component, k, v)
        return args

    button = ToolButton(value="refresh", elem_id=elem_id)
    button.refresh = refresh
    refresh_buttons.append(button)
    return button
