"""The WSGI entry point: gunicorn serves `wsgi:ai_image_generator`."""

from ai_image_generator import create_app

# create_app() sets up logging itself (JSON lines on stdout, see web/logging_setup.py).
ai_image_generator = create_app()
