"""The WSGI entry point: gunicorn serves `wsgi:ai_image_generator`."""

import logging

from ai_image_generator import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
ai_image_generator = create_app()
