import gradio as gr


class InputAccordion(gr.Checkbox):
    """A hidden checkbox shown as an accordion: the 'enabled' value of a script."""

    def extra(self):
        return gr.Column()


class ToolButton(gr.Button):
    pass


class FormRow(gr.Row):
    pass
