"""The book: the plan of notebooks papermill executes, and the figures' one style."""
